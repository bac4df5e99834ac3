"""Does the probe tell collapsing pairs from clean ones before training, and does it warn earlier during a run?

    python benchmarks/probe_eval.py preflight [--seeds 0 1 2] [--json out.json] [--html fig.html]
    python benchmarks/probe_eval.py runs --real-dir /tmp/probe_runs/real
    python benchmarks/probe_eval.py detector --real-dir /tmp/probe_runs/real --tune-seeds 0 1 3

preflight  `opdwatch probe` (Python API) on the demo student against the three demo teachers (the recipe's roles
           teacher = golden SFT + copy prior, teacher_weak = a quarter of the copy prior, teacher_sft = golden SFT
           only), on student rollouts sampled with each seed, and once on golden solutions; prints the loop
           incentive, the EOS advantage after a repeat, the verdict and the runtime of each probe.
runs       what plain OPD did from each pair: the real trainer runs in --real-dir (named GROUP__PAIR_sSEED, trained
           by the commands in docs/probe.md with probe.every=1): first step with truncation >= 0.5, max truncation.
detector   the detector (opdwatch.detector) on those runs with and without a probe signal family (the in-run
           probe's step metrics). The probe signals' floors are chosen on --tune-seeds only; leads before
           truncation reaches 0.5 and false alarms are reported for tuning and held-out runs separately.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import detector_eval as de  # noqa: E402 - the detector benchmark's corpus items and scoring

from opdwatch.detector.settings import DetectorSettings  # noqa: E402
from opdwatch.detector.signals import DEFAULT_SIGNALS, SIGNALS, SignalSpec, _key  # noqa: E402
from opdwatch.probe.summary import (  # noqa: E402
    DELTA_SUFFIX,
    EOS_ADV_REPEAT,
    LOOP_INCENTIVE,
    STUDENT_EOS_REPEAT,
    STUDENT_LOOP_LOGP,
    TEACHER_LOOP_LOGP,
    family_key,
)

TEACHERS = {"copy": "demo-teacher", "weak": "demo-teacher-weak", "clean": "demo-teacher-clean"}


# ----------------------------------------------------------------------------------------------- preflight
def preflight(seeds: list[int], n_prompts: int, json_out: Path | None, html_out: Path | None,
              pairs: list[str], cache_dir: str | None) -> int:
    import torch

    from opdwatch.plots.probe import probe_report_html
    from opdwatch.probe.prompts import demo_prompts
    from opdwatch.probe.run import ProbeSettings, run_probe

    torch.set_num_threads(1)
    prompts = demo_prompts(n_prompts)
    results = []
    print(f"{'pair':6s} {'responses':10s} {'incentive':>9s} {'loop adv':>8s} {'reg adv':>8s} {'EOS adv nat':>11s} "
          f"{'EOS adv rep':>11s} {'t loop lp':>9s} {'risk':>6s} {'time s':>7s}")
    for pair in pairs:
        teacher = TEACHERS[pair]
        for responses, seed in [("golden", 0), *[("student", s) for s in seeds]]:
            settings = ProbeSettings(responses=responses, seed=seed, cache_dir=cache_dir)
            t0 = time.perf_counter()
            report = run_probe("demo-student", teacher, prompts, settings=settings, progress=False)
            wall = time.perf_counter() - t0
            m = report.summary.metrics
            label = "golden" if responses == "golden" else f"seed {seed}"
            print(f"{pair:6s} {label:10s} {m[LOOP_INCENTIVE]:+9.2f} {m['probe/loop_advantage']:+8.2f} "
                  f"{m['probe/regular_advantage']:+8.2f} {m['probe/eos_advantage_natural']:+11.2f} "
                  f"{m[EOS_ADV_REPEAT]:+11.2f} {m[TEACHER_LOOP_LOGP]:9.2f} {report.verdict.risk:>6s} {wall:7.1f}",
                  flush=True)
            results.append({"pair": pair, "teacher": teacher, "responses": responses, "seed": seed,
                            "wall_seconds": wall, **report.to_dict()})
    if json_out:
        json_out.write_text(json.dumps(results, indent=1, default=str))
    if html_out:
        golden = [r for r in results if r["responses"] == "golden"]
        html_out.write_text(probe_report_html({r["pair"]: r for r in golden},
                                              {r["pair"]: (r["risk"], r["reasons"]) for r in golden}))
    return 0


# ----------------------------------------------------------------------------------------------- runs
def _runs(root: Path) -> list[de.Item]:
    return de.real_runs(root)


def runs_table(root: Path) -> int:
    """Every run in `root`, finished or still running (its status says which)."""
    from opdwatch.reader import open_run

    print(f"{'run':30s} {'status':9s} {'steps':>5s} {'trunc>=0.5 at':>13s} {'max trunc':>9s} {'last5':>6s}  "
          "student loop log-prob (probe) step 1 -> last, time/probe / step time")
    for manifest in sorted(root.glob("*/manifest.json")):
        run = open_run(manifest.parent)
        item = de.Item(manifest.parent.name, "", de.run_rows(manifest.parent))
        if not item.rows:
            continue
        trunc = [m.get("rollout/truncation_rate", math.nan) for _, m in item.rows]
        prop = [m.get(STUDENT_LOOP_LOGP, math.nan) for _, m in item.rows]
        cost = [m.get("time/probe", math.nan) / (m["time/rollout"] + m["time/score"] + m["time/update"])
                for _, m in item.rows if "time/rollout" in m]
        print(f"{item.name:30s} {run.status:9s} {len(item.rows):5d} {str(item.collapse):>13s} {max(trunc):9.2f} "
              f"{sum(trunc[-5:]) / len(trunc[-5:]):6.2f}  {prop[0]:6.2f} -> {prop[-1]:6.2f}, "
              f"{sorted(cost)[len(cost) // 2]:.3f} (median)")
    return 0


# ----------------------------------------------------------------------------------------------- corpus
# The in-run-probe corpus (issue 16), fixed on 2026-12-02 before any of its runs: (group, preset, seeds, overrides).
# Every run: probe every step on both probe sets (end-of-solution and mid-solution loops), 1 thread, no validation.
# Groups starting with "stable" are the negatives (set up not to collapse); the clean teacher is the golden-SFT-only
# teacher (`demo.teacher.copy_steps=0`, the shipped role teacher_sft).
PROBE_CORPUS = [
    ("opd-fast", "demo_opd", range(6), ["opd.steps=50"]),
    ("opd-slow", "slow_onset_opd", range(3), ["opd.steps=320"]),
    ("stable-opd", "demo_stable_opd", range(3), ["opd.steps=50"]),
    ("stable-clean", "demo_opd", range(3), ["opd.steps=50", "demo.teacher.copy_steps=0"]),
    ("stable-slow", "slow_onset_opd", range(1), ["opd.steps=250", "opd.beta=0.2", "opd.alpha=1.0"]),
]
PROBE_OVERRIDES = ["probe.every=1", "probe.middle=true", "probe.num_prompts=16", "probe.copies=4",
                   "val.every=0", "checkpoint.every=0", "run.threads=1", "run.progress=false"]


def generate(root: Path, only: str | None) -> int:
    """Train the corpus runs not yet finished in `root` (named GROUP__PRESET_sSEED), one at a time."""
    import shutil
    import subprocess

    from rich.progress import Progress

    from opdwatch.reader import open_run

    todo = [(g, p, s, o) for g, p, seeds, o in PROBE_CORPUS for s in seeds if only is None or g == only]
    root.mkdir(parents=True, exist_ok=True)
    with Progress() as progress:
        task = progress.add_task("probe corpus", total=len(todo))
        for group, preset, seed, overrides in todo:
            name = f"{group}__{preset}_s{seed}"
            if (root / name / "manifest.json").exists():
                if open_run(root / name).status == "finished":
                    progress.advance(task)
                    continue
                shutil.rmtree(root / name)  # an interrupted run: train it again from the start
            cmd = [sys.executable, "-m", "opdwatch.cli", "train", preset, f"run.output_dir={root}",
                   f"run.name={name}", f"run.seed={seed}", *PROBE_OVERRIDES, *overrides]
            progress.console.print(f"[bold]{name}[/]: opdwatch {' '.join(cmd[3:])}")
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, cwd=Path(__file__).parent.parent)
            progress.console.print(f"  done in {time.perf_counter() - t0:.0f} s")
            progress.advance(task)
    return 0


# ----------------------------------------------------------------------------------------------- detector
# Probe signals: the student's own drift on the fixed probe sets (the teacher's scores are fixed). As OPD pays for
# loops, the student's log-prob of continuing a started loop rises and its log-prob of stopping after a repeat
# falls; both are measured on the same sequences every step, so their noise is small. Two probe sets: loops of the
# solution's last sentence (`probe/...`) and of a mid-solution sentence (`probe/middle/...`, probe.middle).
def _signal(name: str, key: str, direction: str, what: str) -> SignalSpec:
    return SignalSpec(name, (key,), _key(key), direction, 0.05, outcome=False, family="probe",
                      description=f"probe: student log-prob of {what}")


PROBE_SIGNALS = {
    "probe_propensity": _signal("probe_propensity", STUDENT_LOOP_LOGP, "up", "continuing a started loop"),
    "probe_eos": _signal("probe_eos", STUDENT_EOS_REPEAT, "down", "stopping after a repeat"),
    "probe_mid_propensity": _signal("probe_mid_propensity", family_key(STUDENT_LOOP_LOGP, "middle"),
                                    "up", "continuing a started mid-solution loop"),
    "probe_mid_eos": _signal("probe_mid_eos", family_key(STUDENT_EOS_REPEAT, "middle"), "down",
                             "stopping after a repeated mid-solution sentence"),
}
FAMILIES = {"end": ("probe_propensity", "probe_eos"), "middle": ("probe_mid_propensity", "probe_mid_eos"),
            "both": tuple(PROBE_SIGNALS)}


def _seed(it: de.Item) -> int:
    return int(it.name.rsplit("_s", 1)[1]) if "_s" in it.name else -1


def detector(root: Path, tune_seeds: set[int], floors: list[float], json_out: Path | None = None) -> int:
    """The detector with and without probe signals. The probe family and floor are chosen on the tuning seeds
    (fewest fires on the negatives, then most >= 5-step leads, then the longest leads); the held-out seeds are
    scored once, with that choice, and reported separately."""
    items = _runs(root)
    tune = [it for it in items if _seed(it) in tune_seeds]
    held = [it for it in items if _seed(it) not in tune_seeds]
    SIGNALS.update(PROBE_SIGNALS)  # this process only: opdwatch.detector itself is unchanged
    base = DetectorSettings()
    warmup = base.warmup_steps

    def settings(choice: tuple[str, float] | None) -> DetectorSettings:
        if choice is None:
            return base
        family, floor = choice
        for name in PROBE_SIGNALS:
            SIGNALS[name] = replace(PROBE_SIGNALS[name], floor=floor)
        return replace(base, signals=",".join([*DEFAULT_SIGNALS, *FAMILIES[family]]))

    results: dict[str, object] = {"tune_seeds": sorted(tune_seeds), "runs": {}}

    def report(label: str, subset: list[de.Item], choice: tuple[str, float] | None, verbose: bool = True
               ) -> de.Score:
        s = de.score(subset, de.ours("warning", settings(choice)), warmup)
        print(s.line(label))
        for it in subset if verbose else ():
            fires = de.ours("warning", settings(choice))(it.rows)
            alarms = de.ours("alarm", settings(choice))(it.rows)
            before = [f for f in fires if it.collapse is None or f <= it.collapse]
            lead = it.collapse - before[-1] if it.collapse is not None and before else None
            print(f"    {it.name:40s} collapse {str(it.collapse):>5s}  warnings at {fires[:6]}  alarms {alarms[:3]}"
                  f"  lead {lead if lead is not None else '-'}")
            results["runs"].setdefault(it.name, {})[label] = {"collapse": it.collapse, "warnings": fires,
                                                              "alarms": alarms, "lead": lead}
        return s

    print(f"corpus {root}: {len(items)} finished runs; tuning seeds {sorted(tune_seeds)}: {len(tune)} runs, "
          f"held out: {len(held)} runs; detector warm-up {warmup} steps")
    head = f"{'':46s} {'>=5 ahead':>10s} {'med lead':>8s} {'min':>4s} {'missed':>6s} {'FA/1k stable':>12s}"
    print(f"\n-- tuning seeds {sorted(tune_seeds)}: choose the probe family and floor\n{head}")
    best, best_key = None, None
    results["tune"] = {"no probe": report("detector (no probe)", tune, None, verbose=False).row()}
    for family in FAMILIES:
        for floor in floors:
            label = f"+ probe {family} (floor {floor:g})"
            sc = report(label, tune, (family, floor), verbose=False)
            results["tune"][label] = sc.row()
            key = (sc.stable_fires, -sc.early, -(sum(sc.leads) if sc.leads else 0))
            if best_key is None or key < best_key:
                best, best_key = (family, floor), key
    assert best is not None
    chosen = f"+ probe {best[0]} (floor {best[1]:g})"
    results["chosen"] = chosen
    print(f"\n-- tuning runs, per run\n{head}")
    report("detector (no probe)", tune, None)
    report(chosen, tune, best)
    print(f"\n-- HELD-OUT runs (seeds not in {sorted(tune_seeds)}), {chosen} as chosen on the tuning seeds\n{head}")
    results["held_out"] = {"no probe": report("detector (no probe)", held, None).row(),
                           chosen: report(chosen, held, best).row()}
    delta_keys = [STUDENT_LOOP_LOGP + DELTA_SUFFIX, family_key(STUDENT_LOOP_LOGP + DELTA_SUFFIX, "middle")]
    print("\nstudent loop log-prob minus step 0 (end / middle probe set) at the warm-up end and 5 steps before "
          "the collapse (or the last step):")
    for it in items:
        rows = dict(it.rows)
        at = [warmup + 1, (it.collapse or len(it.rows)) - 5]
        vals = [[rows.get(st, {}).get(k, math.nan) for k in delta_keys] for st in at]
        print(f"    {it.name:40s} " + "  ".join(f"step {st}: " + ", ".join(f"{v:+.2f}" for v in vs)
                                                  for st, vs in zip(at, vals, strict=True)))
    if json_out:
        json_out.write_text(json.dumps(results, indent=2, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    p = sub.add_parser("preflight")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--n-prompts", type=int, default=64)
    p.add_argument("--json", type=Path)
    p.add_argument("--html", type=Path)
    p.add_argument("--pairs", nargs="+", choices=list(TEACHERS), default=list(TEACHERS))
    p.add_argument("--cache-dir", default=None, help="demo model cache (default: the recipe's)")
    r = sub.add_parser("runs")
    r.add_argument("--real-dir", type=Path, default=Path("/tmp/probe_runs/real"))
    d = sub.add_parser("detector")
    d.add_argument("--real-dir", type=Path, default=Path("/tmp/probe_runs/real"))
    d.add_argument("--tune-seeds", type=int, nargs="+", default=[0, 1])
    d.add_argument("--json", type=Path)
    d.add_argument("--floors", type=float, nargs="+", default=[0.02, 0.05, 0.1, 0.2])
    g = sub.add_parser("generate")
    g.add_argument("--real-dir", type=Path, default=Path("/tmp/probe_runs/real"))
    g.add_argument("--only", help="only this group")
    args = ap.parse_args(argv)
    if args.what == "generate":
        return generate(args.real_dir, args.only)
    if args.what == "preflight":
        return preflight(args.seeds, args.n_prompts, args.json, args.html, args.pairs, args.cache_dir)
    if args.what == "runs":
        return runs_table(args.real_dir)
    return detector(args.real_dir, set(args.tune_seeds), args.floors, args.json)


if __name__ == "__main__":
    sys.exit(main())

"""`opdwatch detect RUN_DIR`: replay a recorded run through the early-warning detector.

Prints when the detector would have warned and alarmed, with the evidence, next to the run's collapse step
(first train step with truncation rate >= 0.5), so detector settings can be tuned on past runs:
``opdwatch detect runs/demo_opd --set h=6 --set warmup_steps=6``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from opdwatch import jsonout
from opdwatch.config_tree import parse_assignments, with_overrides
from opdwatch.detector.replay import Replay, replay
from opdwatch.detector.settings import DetectorSettings, PolicySettings
from opdwatch.errors import OpdwatchError
from opdwatch.reader import open_run
from opdwatch.terminal import console, shown
from opdwatch.text import plural


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--json", action="store_true",
                   help="print the replay summary as JSON (strict: see docs/run-format.md)")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                   help="override a detector setting (repeatable), e.g. --set h=6; see docs/detector.md")
    p.add_argument("--policy", action="append", default=[], metavar="KEY=VALUE",
                   help="override an intervention-policy setting (repeatable), e.g. --policy cooldown_steps=3")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    path = Path(args.run_dir)
    if not path.exists():
        raise OpdwatchError(f"{path}: no such run directory")
    # the same key=value parser and typed override path as `opdwatch train` (opdwatch.config_tree)
    settings = with_overrides(DetectorSettings(), parse_assignments(args.settings, flag="--set", example="--set h=6"))
    policy = with_overrides(PolicySettings(), parse_assignments(args.policy, flag="--policy",
                                                                example="--policy cooldown_steps=3"))
    run = open_run(path)
    result = replay(run, settings, policy)
    if args.json:
        print(jsonout.dumps({"run_id": run.run_id, "path": str(path), **result.summary()}))
        return 0
    _print(console(soft_wrap=True), run.run_id, result)
    return 0


def _fmt(step: int | None) -> str:
    return "never" if step is None else f"step {step}"


def _print(out: Console, run_id: str, r: Replay) -> None:
    # the run id, reasons and evidence come from the run: shown() keeps them text, not markup
    warmup = "the first step" if r.warmup_steps == 1 else f"the first {r.warmup_steps} steps"
    f = r.facts
    missing = f", steps {f.first_step}-{f.last_step} with {f.missing_steps} missing" if f.missing_steps else ""
    out.print(f"[bold]{shown(run_id)}[/]: replayed {plural(r.steps, 'train step')}{missing} (detector warm-up: "
              f"{warmup})")
    collapse = "unknown (no truncation data)" if f.no_truncation_data else _fmt(r.collapse_step)
    out.print(f"first warning: [yellow]{_fmt(r.first_warning)}[/]   first alarm: [red]{_fmt(r.first_alarm)}[/]"
              f"   collapse (truncation >= 0.5): {collapse}")
    if r.note is not None:  # no truncation data, too short, collapsed in the warm-up (also in --json as "note")
        out.print(r.note)
    elif r.collapse_step is not None:
        if r.lead_time is not None:
            earlier = len([s for s in r.episodes if s < (r.warning_before_collapse or 0)])
            note = f" ({plural(earlier, 'earlier warning episode')} ended before it)" if earlier else ""
            out.print(f"lead time: [bold]{plural(r.lead_time, 'step')}[/] (warning from step "
                      f"{r.warning_before_collapse} to the collapse){note}")
        else:
            out.print("[red]no warning before the collapse[/]")
    if not r.transitions:
        out.print("no warning or alarm")
        return
    table = Table(title="state changes")
    table.add_column("step", justify="right")
    table.add_column("state")
    table.add_column("why")
    table.add_column("evidence")
    for t in r.transitions:
        table.add_row(str(t.step), shown(f"{t.previous} -> {t.level}"), shown(t.reason),
                      shown("; ".join(e.describe() for e in t.evidence[:3])))
    out.print(table)
    if r.decisions:
        out.print("in act mode the policy would have: " + shown("; ".join(f"step {d.step}: {d.reason}"
                                                                         for d in r.decisions[:6])))

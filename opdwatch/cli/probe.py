"""`opdwatch probe --teacher T --student S`: pre-flight collapse risk of a (student, teacher) pair.

Builds counterfactual loops from golden solutions or student rollouts, scores them with both models and prints
the advantage per copy index, the loop incentive, the EOS advantage after repeats and a risk verdict
(docs/probe.md). Needs the `train` extra (torch, transformers).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from opdwatch import jsonout
from opdwatch.errors import OpdwatchError
from opdwatch.terminal import console, shown

RISK_STYLE = {"low": "green", "medium": "yellow", "high": "bold red"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", required=True, help="model directory, hub id, or a demo model "
                   "(demo-teacher, demo-teacher-clean, demo-teacher-weak)")
    p.add_argument("--student", required=True, help="model directory, hub id, or demo-student")
    p.add_argument("--reference", default=None, help="optional reference model scored beside them")
    p.add_argument("--prompts", default="demo", help="JSONL/Parquet file of prompt|question|problem (+ solution), "
                   "or 'demo' (the demo task's validation prompts; default)")
    p.add_argument("--n-prompts", type=int, default=64, help="prompts used, from the start of the set (default 64)")
    p.add_argument("--responses", choices=("golden", "student"), default="golden",
                   help="extend golden solutions or student rollouts (default golden)")
    p.add_argument("--copies", type=int, default=6, help="occurrences of the last chunk in the loop (default 6)")
    p.add_argument("--chunk", choices=("line", "sentence", "window"), default="sentence",
                   help="what is repeated: the last line, sentence or --window tokens (default sentence)")
    p.add_argument("--window", type=int, default=8, help="tokens of a window chunk (default 8)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="student rollouts: budget (default 128)")
    p.add_argument("--seed", type=int, default=0, help="student rollouts: sampling seed (default 0)")
    p.add_argument("--eos-map", default="", help="'auto' or student:teacher pairs when the tokenizers' EOS or "
                   "special tokens differ (as the trainer's tokens.eos_map)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda:0 (default cpu)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16", "float64"),
                   help="model dtype (bfloat16 for 1.5B-7B pairs on GPU)")
    p.add_argument("--batch-size", type=int, default=16, help="rows per forward (default 16)")
    p.add_argument("--cache-dir", default=None, help="demo model cache (default $OPDWATCH_CACHE or ~/.cache)")
    p.add_argument("--json", action="store_true", help="print the result as JSON (strict)")
    p.add_argument("--out", default=None, help="write the HTML report here (default probe-report.html without "
                   "--json; none with --json unless given)")
    p.add_argument("--no-report", action="store_true", help="write no HTML report")
    p.set_defaults(handler=handle)


def _prompts(args: argparse.Namespace) -> list:
    from opdwatch.probe.prompts import DEMO_SET, check_prompts, demo_prompts, load_prompts

    if args.n_prompts < 1:
        raise OpdwatchError(f"--n-prompts {args.n_prompts}: must be >= 1")
    prompts = demo_prompts(args.n_prompts) if args.prompts == DEMO_SET else load_prompts(args.prompts)
    return check_prompts(prompts[: args.n_prompts], args.prompts)


def handle(args: argparse.Namespace) -> int:
    from opdwatch.cli.train import import_trainer

    for name in ("copies", "window", "batch_size", "max_new_tokens"):
        if getattr(args, name) < 1 or (name == "copies" and args.copies < 2):
            raise OpdwatchError(f"--{name.replace('_', '-')} {getattr(args, name)}: must be >= "
                                f"{2 if name == 'copies' else 1}")
    prompts = _prompts(args)  # an empty or unreadable set is refused before any model loads
    import_trainer()  # one clear line when torch / transformers are missing
    from opdwatch.probe.run import ProbeSettings, run_probe

    settings = ProbeSettings(responses=args.responses, copies=args.copies, chunk=args.chunk, window=args.window,
                             max_new_tokens=args.max_new_tokens, seed=args.seed, batch_size=args.batch_size,
                             device=args.device, dtype=args.dtype, eos_map=args.eos_map, cache_dir=args.cache_dir)
    report = run_probe(args.student, args.teacher, prompts, reference=args.reference, settings=settings,
                       progress=not args.json)
    out = None if args.no_report else args.out or (None if args.json else "probe-report.html")
    if out is not None:
        from opdwatch.plots.probe import probe_report_html

        label = f"{args.student} vs {args.teacher}"
        Path(out).write_text(probe_report_html({label: report.summary},
                                               {label: (report.verdict.risk, report.verdict.reasons)}),
                             encoding="utf-8")
    if args.json:
        print(jsonout.dumps({**report.to_dict(), "report": out}))
        return 0
    _print(console(soft_wrap=True), report, out)
    return 0


def _f(v: float) -> str:
    return "n/a" if v != v else f"{v:+.3f}"


def _print(c: Console, report, out: str | None) -> None:  # noqa: ANN001
    s = report.summary
    c.print(f"[bold]{shown(report.student)}[/] vs teacher [bold]{shown(report.teacher)}[/]: {s.rows} counterfactuals "
            f"({report.settings.responses} responses, {report.settings.chunk} chunk x {report.settings.copies})")
    t = Table("copy", "tokens", "teacher logp", "student logp", "advantage", title="per copy index (mean per token)")
    for row in s.per_copy:
        k = row["copy"]
        name = "regular" if k == 0 else "last chunk (1)" if k == 1 else str(k)
        t.add_row(name, str(row["tokens"]), _f(row["teacher_logp"]), _f(row["student_logp"]), _f(row["advantage"]))
    c.print(t)
    e = Table("EOS after repeats", "teacher logp", "student logp", "advantage")
    for row in s.eos:
        e.add_row("natural end (0)" if row["repeats"] == 0 else str(row["repeats"]), _f(row["teacher_logp"]),
                  _f(row["student_logp"]), _f(row["advantage"]))
    c.print(e)
    c.print(f"risk: [{RISK_STYLE[report.verdict.risk]}]{report.verdict.risk}[/]")
    for reason in report.verdict.reasons:
        c.print(f"  - {reason}", markup=False)
    sec = report.seconds
    c.print(f"time: {sec['total']:.1f} s (load {sec['load']:.1f}, responses {sec['responses']:.1f}, "
            f"scoring {sec['scoring']:.1f})")
    if out is not None:
        c.print(f"report written to {shown(out)}")

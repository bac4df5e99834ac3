"""Closed loop: does the detector, acting on beta/alpha, keep a collapsing preset from collapsing?

    python benchmarks/closed_loop.py --seed 0            # trains demo_opd and demo_opd_watch (same seed)
    python benchmarks/closed_loop.py --seed 0 --reuse    # only re-plot cached runs
    python benchmarks/closed_loop.py --both opd.lr=1.5e-3 --both opd.steps=120   # same overrides for both runs

Runs plain OPD (the demo_opd preset, trainer/recipes/demo/configs/) and the same preset with the watch in "act"
mode (demo_opd_watch) from the same seed into benchmarks/.corpus/closed_loop/, prints each run's peak train
truncation rate, first warning/alarm and interventions, and saves a figure of both runs' truncation and repetition
curves (PNG via kaleido when it is installed, HTML always) to docs/img/.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

from opdwatch.metric_defs import REPETITION_RATE, TRUNCATION_RATE
from opdwatch.reader import open_run

ROOT = Path(__file__).parent.parent
OUT = Path(__file__).parent / ".corpus" / "closed_loop"
IMG = ROOT / "docs" / "img"


def train(preset: str, name: str, seed: int, extra: list[str]) -> Path:
    cmd = [sys.executable, "-m", "opdwatch.cli", "train", preset, f"run.output_dir={OUT}",  # a preset by name
           f"run.name={name}", f"run.seed={seed}", "run.progress=false", *extra]
    print("$ opdwatch train " + " ".join(cmd[4:]), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    print(f"  {time.perf_counter() - t0:.0f} s", flush=True)
    return OUT / name


def summarize(path: Path) -> dict[str, object]:
    run = open_run(path)
    steps = run.steps("train").collect().sort("step")
    events = run.events()
    trunc = steps[TRUNCATION_RATE]
    first = {k: events.filter(pl.col("kind") == k)["step"].min() for k in ("warning", "alarm")}
    return {"run": path.name, "steps": steps.height, "peak_truncation": float(trunc.max()),
            "peak_step": int(steps["step"][int(trunc.arg_max())]),
            "final_truncation": float(trunc[-1]), "mean_truncation_last10": float(trunc.tail(10).mean()),
            "first_warning": first["warning"], "first_alarm": first["alarm"],
            "interventions": [f"step {s}: {m}" for s, m in
                              events.filter(pl.col("kind") == "intervention").select("step", "message").iter_rows()]}


def figure(paths: dict[str, Path], subtitle: str = "") -> go.Figure:
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, subplot_titles=("rollout truncation rate",
                                                                           "rollout repetition rate"))
    colors = {"plain OPD": "#d62728", "OPD + detector (act)": "#1f77b4"}
    for label, path in paths.items():
        run = open_run(path)
        s = run.steps("train").collect().sort("step")
        for row, key in ((1, TRUNCATION_RATE), (2, REPETITION_RATE)):
            fig.add_trace(go.Scatter(x=s["step"], y=s[key], name=label, legendgroup=label, showlegend=row == 1,
                                     line={"color": colors.get(label)}, customdata=s["step"],
                                     hovertemplate="step %{x}: %{y:.2f}"), row=row, col=1)
        ev = run.events().filter(pl.col("kind").is_in(["warning", "alarm", "intervention"]))
        for step, kind, message in ev.select("step", "kind", "message").iter_rows():
            fig.add_vline(x=step, line_dash="dot", line_color={"warning": "orange", "alarm": "red"}.get(kind, "gray"),
                          opacity=0.6)
            label = {"warning": "warn", "alarm": "ALARM"}.get(kind) or (
                "restore" if "restored" in message else "relax" if "relax" in message else "raise β/α")
            fig.add_annotation(x=step, y=1.0 if kind == "intervention" else 1.08, yref="y domain", text=label,
                               showarrow=False, font={"size": 9}, hovertext=message, xanchor="left")
    fig.add_hline(y=0.2, line_dash="dash", line_color="gray", annotation_text="0.2", row=1, col=1)
    fig.update_yaxes(range=[-0.02, 1.02])
    fig.update_xaxes(title_text="step", row=2, col=1)
    fig.update_layout(title="Same seed: plain OPD vs OPD with the early-warning detector acting on beta/alpha"
                      + (f"<br><sup>{subtitle}</sup>" if subtitle else ""),
                      height=560, width=900, template="plotly_white")
    return fig


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default="", help="suffix of the run names (to keep variants apart)")
    ap.add_argument("--reuse", action="store_true", help="do not train; use the cached runs")
    ap.add_argument("--both", action="append", default=[], help="override for both runs, e.g. opd.lr=1.5e-3")
    ap.add_argument("--set", dest="extra", action="append", default=[], help="override for the watch run only")
    args = ap.parse_args(argv)
    tag = f"-{args.tag}" if args.tag else ""
    names = {"plain OPD": f"demo_opd-seed{args.seed}{tag}",
             "OPD + detector (act)": f"demo_opd_watch-seed{args.seed}{tag}"}
    if not args.reuse:
        OUT.mkdir(parents=True, exist_ok=True)
        for name, preset in zip(names.values(), ("demo_opd", "demo_opd_watch"), strict=True):
            if (OUT / name / "manifest.json").exists():
                if open_run(OUT / name).status == "finished":
                    continue
                import shutil

                shutil.rmtree(OUT / name)
            train(preset, name, args.seed, [*args.both, *(args.extra if "watch" in preset else [])])
    paths = {label: OUT / name for label, name in names.items()}
    results = {label: summarize(p) for label, p in paths.items()}
    print(json.dumps(results, indent=2, default=str))
    IMG.mkdir(parents=True, exist_ok=True)
    run0 = open_run(next(iter(paths.values())))
    opd = run0.manifest.get("config", {}).get("opd", {})
    steps = run0.manifest.get("last_step")
    fig = figure(paths, f"demo_opd preset, seed {args.seed}, lr {opd.get('lr')}, {steps} steps")
    stem = IMG / f"detector_closed_loop_seed{args.seed}{tag}"
    fig.write_html(f"{stem}.html", include_plotlyjs="cdn")
    try:
        fig.write_image(f"{stem}.png", scale=1)
        print(f"figure: {stem}.png (and .html)")
    except Exception as exc:  # noqa: BLE001 - kaleido/chromium missing: the HTML and the numbers remain
        print(f"figure: {stem}.html (PNG export unavailable: {type(exc).__name__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

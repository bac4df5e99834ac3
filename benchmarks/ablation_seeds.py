"""The ablation preset over seeds (issue 18): Table 2's arms, and the four criteria checked per seed.

    for s in 0 1 2; do opdwatch demo --ablation --seed $s --threads 1 --output-dir /tmp/ablation/seed$s; done
    python benchmarks/ablation_seeds.py /tmp/ablation [--json out.json] [--html docs/img/ablation_seeds.html]

Reads ROOT/seed*/ablation_{opd,kl,stable}-seed*/ (any run directory whose name starts with the preset name) and,
per seed, takes each arm's row of the multi-run comparison (opdwatch.comparison, what `opdwatch analyze` prints)
and checks the issue's criteria, fixed before the runs:
  1. greedy validation accuracy at the end orders plain OPD < +KL <= +KL+mixture;
  2. Stable-OPD (+KL+mixture) ends above its own step-0 greedy accuracy;
  3. plain OPD reaches train rollout truncation >= 0.5;
  4. Stable-OPD's train rollout truncation stays <= 0.2.
A criterion holds overall when it holds in at least 2 of 3 seeds. Also writes a figure of greedy and sampled
validation accuracy per arm and seed (plotly HTML; PNG too when kaleido works).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from opdwatch.analysis import analyze_run
from opdwatch.comparison import VAL_GREEDY_ACCURACY, comparison_row
from opdwatch.metric_defs import VAL_ACCURACY
from opdwatch.reader import open_run

ARMS = (("ablation_opd", "OPD"), ("ablation_kl", "+ KL"), ("ablation_stable", "+ KL + mixture"))
COLORS = {"OPD": "#d62728", "+ KL": "#ff7f0e", "+ KL + mixture": "#1f77b4"}


def seed_runs(root: Path) -> dict[str, dict[str, Path]]:
    """{seed dir name: {arm label: run dir}} for the seeds whose three arms all finished."""
    out: dict[str, dict[str, Path]] = {}
    for seed_dir in sorted(p for p in root.glob("seed*") if p.is_dir()):
        arms = {}
        for preset, label in ARMS:
            found = [p for p in seed_dir.glob(f"{preset}*") if (p / "manifest.json").exists()
                     and open_run(p).status == "finished"]
            if found:
                arms[label] = found[0]
        if len(arms) == len(ARMS):
            out[seed_dir.name] = arms
    return out


def criteria(rows: dict[str, dict]) -> dict[str, bool | None]:
    def g(label: str, key: str) -> float | None:
        return rows[label].get(key)

    opd, kl, st = (g(lbl, "greedy_accuracy_final") for lbl in ("OPD", "+ KL", "+ KL + mixture"))
    first = g("+ KL + mixture", "greedy_accuracy_first")
    ordering = None if None in (opd, kl, st) else bool(opd < kl <= st)
    return {"greedy order OPD < +KL <= +KL+mix": ordering,
            "Stable-OPD ends above its step 0 (greedy)": None if None in (st, first) else bool(st > first),
            "plain OPD truncation >= 0.5": bool((g("OPD", "peak_truncation") or 0) >= 0.5),
            "Stable-OPD truncation <= 0.2": bool((g("+ KL + mixture", "peak_truncation") or 0) <= 0.2)}


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--html", type=Path)
    args = ap.parse_args(argv)
    seeds = seed_runs(args.root)
    if not seeds:
        print(f"error: no seed with all three finished arms under {args.root}", file=sys.stderr)
        return 2
    results: dict[str, dict] = {}
    fig = make_subplots(rows=1, cols=2, subplot_titles=("greedy validation accuracy", "sampled (T=1) accuracy"))
    for seed, arms in seeds.items():
        rows = {}
        for label, path in arms.items():
            analysis = analyze_run(open_run(path), label=label)
            rows[label] = comparison_row(analysis)
            s = analysis.series
            for col, key in ((1, VAL_GREEDY_ACCURACY), (2, VAL_ACCURACY)):
                if key in s.columns:
                    v = s.select("step", key).drop_nulls(key).sort("step")
                    fig.add_trace(go.Scatter(x=v["step"], y=v[key], name=f"{label} ({seed})", legendgroup=label,
                                             showlegend=col == 1, line={"color": COLORS[label]},
                                             mode="lines+markers"), row=1, col=col)
        results[seed] = {"rows": rows, "criteria": criteria(rows)}
    print("| seed | arm | greedy acc first → final (best) | sampled acc first → final | peak truncation (step) "
          "| onset | verdict |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for seed, r in results.items():
        for label, row in r["rows"].items():
            print(f"| {seed} | {label} | {_f(row['greedy_accuracy_first'])} → {_f(row['greedy_accuracy_final'])} "
                  f"({_f(row['greedy_accuracy_best'])}) | {_f(row['val_accuracy_first'])} → "
                  f"{_f(row['val_accuracy_final'])} | {_f(row['peak_truncation'])} ({row['peak_truncation_step']}) "
                  f"| {row['onset_step'] if row['onset_step'] is not None else '-'} | {row['verdict']} |")
    print()
    names = list(next(iter(results.values()))["criteria"])
    for name in names:
        held = [seed for seed, r in results.items() if r["criteria"][name]]
        verdict = "holds" if len(held) >= 2 else "does not hold"
        print(f"{name}: {len(held)}/{len(results)} seeds ({', '.join(held) or 'none'}) -> {verdict} "
              f"(criterion: >= 2 of 3)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    if args.html:
        fig.update_layout(title="Ablation preset: validation accuracy per arm and seed", template="plotly_white",
                          height=420, width=1000)
        fig.update_xaxes(title_text="step")
        args.html.parent.mkdir(parents=True, exist_ok=True)
        fig.write_html(args.html, include_plotlyjs="cdn")
        try:
            fig.write_image(args.html.with_suffix(".png"))
        except Exception as exc:  # noqa: BLE001 - kaleido/chromium missing: the HTML and the table remain
            print(f"(PNG export unavailable: {type(exc).__name__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

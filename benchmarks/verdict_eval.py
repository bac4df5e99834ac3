"""Score the verdict (label + onset) on the designed synthetic families, tuning seeds apart from held-out.

    python benchmarks/verdict_eval.py                       # default settings, tuning and held-out tables
    python benchmarks/verdict_eval.py --grid                # the tuning grid, scored on seeds 0-2 only
    python benchmarks/verdict_eval.py --runs /tmp/opd_runs/*/  # real run directories (label, onset, episodes)

Each case (tests/synthetic_runs.py: FAMILIES, case()) is recorded once through the Recorder into
``--cache`` and read back with ``step_series``, as ``opdwatch analyze`` does. A case passes when the
label is the designed one and the onset is within 2 steps of the designed onset (or absent where none
was designed). Results are in docs/analysis.md.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import polars as pl  # noqa: E402

from opdwatch.changepoints import ChangepointSettings  # noqa: E402
from opdwatch.reader import open_run  # noqa: E402
from opdwatch.series import step_series  # noqa: E402
from opdwatch.verdict import VerdictSettings, verdict  # noqa: E402
from tests.synthetic_runs import FAMILIES, case  # noqa: E402

TUNING, HELD_OUT = range(0, 3), range(3, 10)


def load(cache: Path, family: str, seed: int) -> tuple[pl.DataFrame, object]:
    c = case(family, seed)
    path = cache / f"{family}-{seed}"
    if not (path / "manifest.json").exists():
        c.record(path)
    return step_series(open_run(path)), c


def score(frames: list[tuple[pl.DataFrame, object]], settings: VerdictSettings) -> list[dict]:
    rows = []
    for frame, c in frames:
        v = verdict(frame, settings=settings)
        onset_ok = (v.onset.step is None) if c.onset is None else (
            v.onset.step is not None and abs(v.onset.step - c.onset) <= 2)
        ep_ok = len(v.episodes) == len(c.episodes) and all(
            abs(e.start - a) <= 2 and ((b is None and e.end is None) or (b is not None and e.end is not None
                                                                         and abs(e.end - b) <= 3))
            for e, (a, b) in zip(v.episodes, c.episodes))
        rows.append({"family": c.family, "seed": c.seed, "want": c.label, "got": v.label, "onset": c.onset,
                     "found": v.onset.step, "ok": v.label == c.label and onset_ok, "regimes": len(v.regimes),
                     "episodes_ok": ep_ok})
    return rows


def table(rows: list[dict], title: str) -> None:
    print(f"\n## {title}: {sum(r['ok'] for r in rows)}/{len(rows)} pass")
    print("| family | designed label | label + onset | episodes (start ±2, end ±3) | failures (seed: label, onset "
          "found vs designed) |")
    print("| --- | --- | --- | --- | --- |")
    for fam in FAMILIES:
        rs = [r for r in rows if r["family"] == fam]
        if not rs:
            continue
        bad = "; ".join(f"{r['seed']}: {r['got']}, {r['found']} vs {r['onset']}" for r in rs if not r["ok"])
        eps = f"{sum(r['episodes_ok'] for r in rs)}/{len(rs)}"
        print(f"| {fam} | {rs[0]['want']} | {sum(r['ok'] for r in rs)}/{len(rs)} | {eps} | {bad} |")


def stress(seeds: range = range(40)) -> list[tuple[str, pl.DataFrame]]:
    """In-memory stress series for tuning (binomial draws, no recorder): a long quiet phase, a 10-step
    collapse and a long noisy 0.15-0.6 regime (must stay "collapsed, recovering"), a one-step 0.9 spike
    (healthy) and a stationary 0.02-0.3 run (healthy), at 16, 32 or 64 rollouts a step."""
    import numpy as np

    out = []
    for seed in seeds:
        rng = np.random.default_rng([99, seed])
        n = int(rng.choice([16, 32, 64]))
        long = np.r_[np.full(int(rng.integers(20, 200)), 0.04), np.full(10, 0.95),
                     rng.uniform(0.15, 0.6, int(rng.integers(40, 150)))]
        spike = np.full(80, 0.04)
        spike[int(rng.integers(20, 60))] = 0.9
        for want, p in (("collapsed, recovering", long), ("healthy", spike), ("healthy", rng.uniform(0.02, 0.3, 120))):
            y = rng.binomial(n, p) / n
            out.append((want, pl.DataFrame({"step": np.arange(1, len(p) + 1), "rollout/count": np.full(len(p), n),
                                            "rollout/truncation_rate": y})))
    return out


def grid(frames: list[tuple[pl.DataFrame, object]]) -> None:
    extra = stress()
    print("| cost | penalty | median3 | merge_within | families, seeds 0-2 | stress: long partial / spike / "
          "stable | mean regimes per family (" + ", ".join(FAMILIES) + ") |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for cost, pen, med, merge in itertools.product(("normal", "l2"), (1.0, 2.0, 3.0, 5.0, 8.0), (False, True),
                                                   (0.0, 0.05)):
        cp = ChangepointSettings(cost=cost, penalty=pen, median3=med, merge_within=merge)
        settings = replace(VerdictSettings(), changepoints=cp)
        rows = score(frames, settings)
        per = [sum(r["regimes"] for r in rows if r["family"] == f) / max(1, sum(r["family"] == f for r in rows))
               for f in FAMILIES]
        ok = [sum(verdict(f, settings=settings).label == want for want, f in extra[k::3]) for k in range(3)]
        print(f"| {cost} | {pen:g} | {med} | {merge:g} | {sum(r['ok'] for r in rows)}/{len(rows)} | "
              + " / ".join(f"{x}/{len(extra) // 3}" for x in ok) + " | " + " ".join(f"{x:.1f}" for x in per) + " |")


def real(paths: list[str]) -> None:
    print("| run | steps | label | onset | episodes | now |")
    print("| --- | --- | --- | --- | --- | --- |")
    for p in paths:
        frame = step_series(open_run(p))
        v = verdict(frame)
        eps = "; ".join(e.describe() for e in v.episodes) or "-"
        now = "-" if v.current is None else f"{v.current.level:.2f} since {v.current.since}"
        print(f"| {Path(p).name} | {frame.height} | {v.label} | {v.onset.step} | {eps} | {now} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/opdwatch-verdict-cases"))
    ap.add_argument("--grid", action="store_true")
    ap.add_argument("--runs", nargs="*", default=None)
    args = ap.parse_args()
    if args.runs:
        real(args.runs)
        return
    args.cache.mkdir(parents=True, exist_ok=True)
    tuning = [load(args.cache, f, s) for f in FAMILIES for s in TUNING]
    if args.grid:
        grid(tuning)
        return
    held = [load(args.cache, f, s) for f in FAMILIES for s in HELD_OUT]
    table(score(tuning, VerdictSettings()), "tuning seeds 0-2")
    table(score(held, VerdictSettings()), "held-out seeds 3-9")


if __name__ == "__main__":
    main()
